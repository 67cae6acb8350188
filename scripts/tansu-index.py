#!/usr/bin/env python3
"""Adds to a tansu sqlite log the index its schema lacks: `header (topition, offset_id)`.

tansu 0.6 reads a fetched record's headers with a join on (topition, offset_id) that the header
table has no index for, so every record fetched scans every header stored: fetches slow down with
the size of the log until consumers stall (seen in `make chaos`: 34,000 records in 5 minutes, the
broker at 95 % CPU in sqlite's b-tree walk). With the index, the same run produced its 199,920
records within a minute. skuflow puts two headers on every record, so it creates the index on
every sqlite log it starts a broker on; creating it again is a no-op.

Usage: tansu-index.py PATH_TO_TANSU_DB [SECONDS_TO_WAIT_FOR_THE_SCHEMA]
"""
import sqlite3
import sys
import time

db = sys.argv[1]
deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
while True:
    try:
        with sqlite3.connect(db, timeout=60) as c:
            c.execute(
                "CREATE INDEX IF NOT EXISTS skuflow_header_record ON header (topition, offset_id)"
            )
        break
    except sqlite3.OperationalError as e:
        # The broker creates its schema as it starts.
        if "no such table" in str(e) and time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        sys.exit(f"tansu-index: {db}: {e}")
