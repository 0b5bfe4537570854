from data2vec.cli import main

raise SystemExit(main())
