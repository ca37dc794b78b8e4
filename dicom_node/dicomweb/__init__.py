"""DICOMweb services the node offers (STOW-RS input: dicom_node.dicomweb.stow). The STOW-RS client
of DICOMweb destinations is dicom_node.sending.dicomweb."""
