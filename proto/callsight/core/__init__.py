"""What every layer may import: the error hierarchy and the clock. Imports nothing of callsight."""
