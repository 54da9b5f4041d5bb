"""The ``lfactory`` command line (see ``lfactory.cli``)."""
