"""`edgesplit report`: one self-contained HTML page from the files the stages wrote."""
