"""Prints what an app sees of its start-up: argv, __name__, sys.path[0], and its module file."""
import os
import sys

print("argv", sys.argv)
print("name", __name__)
print("path0", os.path.realpath(sys.path[0]))
print("file", os.path.basename(__file__))
