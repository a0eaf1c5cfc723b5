from litpulse.cli import main

raise SystemExit(main())
