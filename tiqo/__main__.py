from tiqo.cli.main import main

main()
