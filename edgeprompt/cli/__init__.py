"""The ``edgeprompt`` command line: thin typer commands over ``edgeprompt.api`` (torch-free at import)."""
