from farebox.catalog.model import Catalog, Endpoint, Model, Pricing, Provider

__all__ = ["Catalog", "Endpoint", "Model", "Pricing", "Provider"]
