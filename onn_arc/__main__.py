from onn_arc.cli.app import main

main()
