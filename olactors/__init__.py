"""olactors: an OpenLambda-style serverless worker on trio."""

__version__ = "0.1.0"
