"""The parquant command line: argv parsing, logging/progress setup, exit codes. Logic lives in pkg/."""
