"""The command view: one catalog of queries (``queries``) feeding Grafana boards built as code
(``grafana_build``, provisioning, ``deploy``) and the built-in live board (``board``)."""
