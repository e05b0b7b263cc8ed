from backbone.cli import app

app()
