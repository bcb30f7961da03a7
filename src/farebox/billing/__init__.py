"""Money coming in: payment rails, purchases, invoices, statements, alerts."""
