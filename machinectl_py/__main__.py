from machinectl_py.cli import main

raise SystemExit(main())
