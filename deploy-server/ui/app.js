// deploykit dashboard script (written by the dashboard work in progress)
