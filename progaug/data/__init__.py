"""Data: the bundled HGSC demo tiles, folders of users' images, image conversion, and the source-class
tiles a pair generates from."""

from progaug.data.folder import folder_tiles
from progaug.data.hgsc import HGSC_CLASSES, TileSpec, hgsc_tiles
from progaug.data.images import load_rgb, to_rgb
from progaug.data.sources import source_tiles
from progaug.data.tiles import TileSet, TileDataset

__all__ = ["HGSC_CLASSES", "TileDataset", "TileSet", "TileSpec", "folder_tiles", "hgsc_tiles", "load_rgb", "source_tiles", "to_rgb"]
