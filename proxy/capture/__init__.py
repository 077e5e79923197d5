"""Captured calls: the record of one served request and the store each backend keeps."""
