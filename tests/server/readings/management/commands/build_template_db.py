"""Builds the template DB: `manage.py build_template_db PATH`.

Migrates a fresh SQLite file once, so that each test server starts from a copy
of it instead of running migrations (which takes seconds).
"""
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a migrated SQLite template DB at PATH (replaced atomically)."

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, **options):
        target = os.path.abspath(options["path"])
        fd, tmp = tempfile.mkstemp(suffix=".sqlite3", dir=os.path.dirname(target))
        os.close(fd)
        os.unlink(tmp)
        env = dict(os.environ, PROFILO_DB_PATH=tmp)
        manage = os.path.join(os.path.dirname(__file__), "..", "..", "..", "manage.py")
        subprocess.run(
            [sys.executable, os.path.abspath(manage), "migrate", "--noinput", "-v", "0"],
            env=env,
            check=True,
        )
        # Fold the WAL into the main file so one file is the whole DB.
        conn = sqlite3.connect(tmp)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
        for suffix in ("-wal", "-shm"):
            if os.path.exists(tmp + suffix):
                os.unlink(tmp + suffix)
        shutil.move(tmp, target)
        self.stdout.write(f"template DB written to {target}")
