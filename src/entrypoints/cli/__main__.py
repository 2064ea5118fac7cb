from obp_workflow.entrypoints.cli.main import main

raise SystemExit(main())
