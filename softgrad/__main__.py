from softgrad.cli import entry

entry()
