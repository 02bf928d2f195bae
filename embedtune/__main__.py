from embedtune.cli import main

main()
