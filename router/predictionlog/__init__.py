"""The router's side of the prediction log: written off the request path, uploaded to a store."""
