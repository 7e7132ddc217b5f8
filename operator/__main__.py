from kubetrain.operator.handlers import main

main()
