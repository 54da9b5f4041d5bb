"""LoveDA classes and palette, LoveDA I/O, and synthetic landscapes."""
