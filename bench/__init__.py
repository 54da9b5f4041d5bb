"""Benchmarks: each prints a table and writes JSON under ``bench/results/``; they are not tests."""
