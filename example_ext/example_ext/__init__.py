"""example-ext: a host-framework extension."""
