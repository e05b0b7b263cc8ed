"""The built-in read-only command view (static page + JSON API over the query catalog)."""
