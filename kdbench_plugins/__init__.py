"""Built-in kdbench distillers, one plugin module each."""
