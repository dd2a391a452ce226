"""python -m apps.counter {server,client} ..."""

from apps.counter.cli import main

raise SystemExit(main())
