import pathlib
import sys

# The package under test, whatever directory pytest runs from.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
