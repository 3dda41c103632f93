from zeone.cli import main

main()
