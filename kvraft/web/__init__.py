"""What the HTTP listener shows: ``/status`` (``status``), the sampling that feeds it
(``tracker``) and the Prometheus collector (``collector``). ``kvraft.http`` builds the
site; the dashboard's files are in ``kvraft/static/``."""
