"""`python -m tfm.parallel PRESET --data D --fsdp F --tensor T`: print the sharding plan (see report.main)."""

from tfm.parallel.report import main

main()
