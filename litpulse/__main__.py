from litpulse.app.cli import main

raise SystemExit(main())
