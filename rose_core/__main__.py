from rose_core.cli import main

raise SystemExit(main())
