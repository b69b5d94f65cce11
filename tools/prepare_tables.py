"""Your own data (an interaction table and an item table, or RecBole atomic files) -> dataset folder.

The same command as ``mmm4rec prepare`` (mmm4rec/data/prepare.py, which documents it; docs/data_format.md lists
every option):

  python tools/prepare_tables.py --interactions raw/events.csv --items raw/products.csv --out data/shop --name shop \\
      --user-col visitor --item-col sku --time-col ts --time-format unix_ms --text-fields title brand
"""
import sys

from mmm4rec.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
