"""The command line: parse arguments, call the core, print. No behaviour lives here."""
