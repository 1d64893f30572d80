#!/usr/bin/python3
"""Print the arguments after argv[0] as one line of JSON: what the program
really received, one element per argument."""
import json
import sys

print(json.dumps(sys.argv[1:]))
