"""What handlers are given, declared once."""

from litestar.di import NamedDependency

from ledger.composition import Services

# Provided by create_app() from app.state; named, as Litestar 3 will require.
LedgerDep = NamedDependency[Services]
