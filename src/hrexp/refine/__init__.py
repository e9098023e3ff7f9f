"""Coarse-to-fine refinement: patches cut from the original image around each landmark (``patches``) and
the second-stage network that refines the landmark inside its patch (``refiner``)."""
