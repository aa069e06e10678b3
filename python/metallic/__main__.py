from metallic.cli import main

raise SystemExit(main())
