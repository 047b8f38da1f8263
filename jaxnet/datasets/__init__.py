"""Real data sets from their official files: MNIST, CIFAR-10, any data set in idx layout, and a
folder of your own images with one sub-folder per class (:func:`load_image_folder`).

One module per data set describes its files as data (name, size, md5, mirrors) and parses them;
:mod:`jaxnet.datasets.files` finds a data set's folder, checks files once (size and md5,
remembered in the cache), downloads what is missing with pooch, and keeps decoded arrays.
Images come back uint8 NHWC, labels int32; every malformed file raises :class:`DataError`.
"""

from jaxnet.datasets.cifar10 import load_cifar10
from jaxnet.datasets.files import DataError, Dataset, FileSpec, cache_dir, data_root, verify_file
from jaxnet.datasets.image_folder import ImageFolderError, load_image_folder
from jaxnet.datasets.mnist import load_idx_dir, load_mnist

__all__ = [
    "DataError",
    "Dataset",
    "FileSpec",
    "ImageFolderError",
    "cache_dir",
    "data_root",
    "load_cifar10",
    "load_idx_dir",
    "load_image_folder",
    "load_mnist",
    "verify_file",
]
