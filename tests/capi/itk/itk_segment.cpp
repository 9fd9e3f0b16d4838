// ITK consumer of libdspnet: read a CT and its labels (NIfTI) with ITK, keep the labels of one axial
// slice as the support, segment its neighbours through dspnet.hpp, write the result with ITK, read it
// back and check that its geometry (size, spacing, origin, direction) equals the input's.
//
//   itk_segment WEIGHTS IMAGE.nii.gz LABELS.nii.gz OUT.nii.gz [SUPPORT_K]

#include <dspnet.hpp>

#include <itkImage.h>
#include <itkImageFileReader.h>
#include <itkImageFileWriter.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

using ImageType = itk::Image<float, 3>;
using LabelType = itk::Image<std::uint16_t, 3>;

template <class T> typename T::Pointer read(const std::string &path) {
    auto reader = itk::ImageFileReader<T>::New();
    reader->SetFileName(path);
    reader->Update();
    return reader->GetOutput();
}

template <class A, class B> bool same_geometry(const A *a, const B *b, std::string &why) {
    const double tol = 1e-6;
    for (unsigned d = 0; d < 3; ++d) {
        if (a->GetLargestPossibleRegion().GetSize()[d] != b->GetLargestPossibleRegion().GetSize()[d]) why += " size";
        if (std::abs(a->GetSpacing()[d] - b->GetSpacing()[d]) > tol) why += " spacing";
        if (std::abs(a->GetOrigin()[d] - b->GetOrigin()[d]) > tol) why += " origin";
        for (unsigned e = 0; e < 3; ++e)
            if (std::abs(a->GetDirection()[d][e] - b->GetDirection()[d][e]) > tol) why += " direction";
    }
    return why.empty();
}

int main(int argc, char **argv) {
    if (argc < 5) {
        std::cerr << "usage: " << argv[0] << " WEIGHTS IMAGE LABELS OUT [SUPPORT_K]\n";
        return 2;
    }
    try {
        const auto image = read<ImageType>(argv[2]);
        const auto truth = read<LabelType>(argv[3]);
        const auto size = image->GetLargestPossibleRegion().GetSize();
        const dspnet::Dims dims{size[0], size[1], size[2]};
        const std::size_t k = argc > 5 ? std::stoul(argv[5]) : size[2] / 2;
        const std::size_t plane = dims[0] * dims[1];
        std::string why;
        if (!same_geometry(image.GetPointer(), truth.GetPointer(), why) || k == 0 || k + 1 >= dims[2]) {
            std::cerr << "labels do not match the image (" << why << ") or slice " << k << " is on the border\n";
            return 1;
        }

        // Support: the labels of slice k only.
        const std::uint16_t *t = truth->GetBufferPointer();
        std::vector<std::uint16_t> support(dspnet::voxel_count(dims), 0);
        std::copy(t + k * plane, t + (k + 1) * plane, support.begin() + static_cast<std::ptrdiff_t>(k * plane));

        // ITK buffers are i-fastest, as libdspnet expects; spacing is (i, j, k).
        const auto sp = image->GetSpacing();
        const dspnet::VolumeView<float> view(image->GetBufferPointer(), dims, {sp[0], sp[1], sp[2]});
        dspnet::Model model(argv[1], "cpu");
        dspnet::SegmentOptions opts;
        opts.modality = dspnet::Modality::Ct;
        opts.extent = dspnet::Extent::range(k - 1, k + 1);
        dspnet::SegmentSummary summary;
        const std::vector<std::uint16_t> labels = model.segment(view, support, opts, &summary);

        // Write with the input's geometry.
        auto result = LabelType::New();
        result->SetRegions(image->GetLargestPossibleRegion());
        result->CopyInformation(image);
        result->Allocate();
        std::copy(labels.begin(), labels.end(), result->GetBufferPointer());
        auto writer = itk::ImageFileWriter<LabelType>::New();
        writer->SetFileName(argv[4]);
        writer->SetInput(result);
        writer->Update();

        // Read back and check.
        const auto back = read<LabelType>(argv[4]);
        int failed = 0;
        why.clear();
        if (!same_geometry(image.GetPointer(), back.GetPointer(), why)) {
            std::cerr << "FAIL: written geometry differs from the input's:" << why << "\n";
            failed++;
        }
        const std::uint16_t *b = back->GetBufferPointer();
        if (!std::equal(labels.begin(), labels.end(), b)) {
            std::cerr << "FAIL: labels read back differ from those written\n";
            failed++;
        }
        if (!std::equal(b + k * plane, b + (k + 1) * plane, t + k * plane)) {
            std::cerr << "FAIL: the support slice was not kept\n";
            failed++;
        }
        std::size_t outside = 0, labelled = 0;
        for (std::size_t v = 0; v < labels.size(); ++v) {
            const std::size_t z = v / plane;
            labelled += labels[v] != 0;
            outside += labels[v] > 1 || ((z + 1 < k || z > k + 1) && labels[v] != 0);
        }
        if (outside != 0 || summary.slices_processed != 2 || summary.slice_axis != 2) {
            std::cerr << "FAIL: " << outside << " voxels labelled outside slices " << k - 1 << ".." << k + 1 << ", "
                      << summary.slices_processed << " slices processed, axis " << summary.slice_axis << "\n";
            failed++;
        }
        std::cout << "itk_segment: " << dims[0] << "x" << dims[1] << "x" << dims[2] << ", support slice " << k << ", "
                  << labelled << " labelled voxels, " << summary.seconds << " s; geometry "
                  << (why.empty() ? "matches" : "differs") << "\n";
        return failed == 0 ? 0 : 1;
    } catch (const dspnet::Error &e) {
        std::cerr << "FAIL: libdspnet: " << e.what() << "\n";
    } catch (const itk::ExceptionObject &e) {
        std::cerr << "FAIL: ITK: " << e.what() << "\n";
    }
    return 1;
}
