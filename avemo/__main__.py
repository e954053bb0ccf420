from avemo.cli import main

raise SystemExit(main())
