"""Programs the tests run in a process of their own (`python -m tests.programs.<name>`): to kill,
interrupt or give other devices than the test process has."""
