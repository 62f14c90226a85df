from ldmcli.cli.main import run

run()
