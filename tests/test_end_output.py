"""stdout's reader gets its end of file when the data is done, not when
punchcat exits: tidying the routers (the follower's hold, removing port
mappings) may keep the process a few seconds more."""

import subprocess
import sys

CHILD = r'''
import sys, time
from punchcat.session import end_output
sys.stdout.write("the data")
end_output()
print("a late line goes nowhere, without an error", flush=True)
time.sleep(20)                      # stands for the tidying
'''


def test_stdout_ends_while_the_process_still_runs():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        out = child.stdout.read()               # returns at end of file
        assert out == b"the data"
        assert child.poll() is None             # the end of file came before the exit
    finally:
        child.kill()
        _, err = child.communicate()
    assert b"Traceback" not in err
