from jaccli.cli import main

main(prog_name="jac")
