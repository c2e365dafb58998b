"""One module per command of the ``uploaderd`` command line."""
