from softgrad.cli import main

main(prog_name="softgrad")
