from docqueue.cli import main

main()
